{"alg":"ed25519","keyId":"3cdf0fc27f7bd2b3","sig":"OLCoXhnngqPy4Qox4CeX26Qf4hvTtIN2dICyGARYrA4ZTfFmnw+WF0IgRUKrQESPm01BjM/niZcDTxJHjbpWBA=="}
