"""The admin's formats for English: ``2026-12-07 12:03:04`` everywhere (lists, pages, the dashboard).

Operators compare times with logs and the task history to the second; Django's English default
("Dec. 7, 2026, 12:03 p.m.") drops the seconds. Input formats stay Django's.
"""

DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
DATETIME_FORMAT = "Y-m-d H:i:s"
SHORT_DATE_FORMAT = "Y-m-d"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s"
