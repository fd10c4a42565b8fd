"""Task artifacts: files a task produces, kept in an S3-compatible store or a local directory.

``actions`` owns every change of an artifact's row; ``storage`` picks the backend
(``s3`` or ``local``, setting ``TASK_ARTIFACT_STORAGE``); the views in
``tasks.api.artifacts`` only parse requests and call these. docs/artifacts.md.
"""
