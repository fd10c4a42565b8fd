"""Live updates for the admin: a websocket per staff browser, told which topics changed (docs/admin.md)."""
