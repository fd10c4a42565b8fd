"""Health: the cheap liveness probe and the comprehensive check (django-health-check 4, checks listed per view)."""
