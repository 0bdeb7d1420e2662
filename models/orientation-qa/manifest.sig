{"alg":"ed25519","keyId":"3cdf0fc27f7bd2b3","sig":"M//YQRROO6pEbIjRo7fDbyAvPfFJFTD3yZ7Oe3ZR/prYSjA1LvOkRJhgh6XCslGeLd71eg53LiAK74g5tR12Ag=="}
