{"alg":"ed25519","keyId":"3cdf0fc27f7bd2b3","sig":"pWnf3S42HY64kr3+DXieCVy0jSZKp+ThCTzRw4NlKSoo5HldwFOF/A+3pIuFbCjgIQeJb+C0p/hDo4gQDgSfAQ=="}
