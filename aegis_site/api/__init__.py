"""What every part of the HTTP API shares: authentication, permissions, errors, paging, throttles."""
