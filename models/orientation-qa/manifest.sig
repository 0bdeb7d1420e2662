{"alg":"ed25519","keyId":"3cdf0fc27f7bd2b3","sig":"bw/IhDk+i+gzFWvOcim8S9+jRfm6ytK6aiYpC06WsLevINXe/07ohHfSIpXs5RIKBohlJjY4PFwgSpGt605SDw=="}
