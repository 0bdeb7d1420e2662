{"alg":"ed25519","keyId":"3cdf0fc27f7bd2b3","sig":"R/TJ+Egl4zDZIQryjeFEw6mDmbrdn6U9JNgWPpXpi1CpeVzoYrUwHNlsAHtmPcblpk8XkUo0EtqrioXMgBH/Bg=="}
