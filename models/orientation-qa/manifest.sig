{"alg":"ed25519","keyId":"3cdf0fc27f7bd2b3","sig":"S3wJfVVUeXCA2xUOwR6zQymeFmPRbNhItxR4YQR8AoolWSqGabR7A7tSXahztTxQ4OxVJKFNSil7rAYYmotPDQ=="}
