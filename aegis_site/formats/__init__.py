"""Date and time formats of the admin (``FORMAT_MODULE_PATH``): every time with seconds, year first."""
