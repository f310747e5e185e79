"""The RDS API: signing (pure), response models (pure), and the async client."""

DEFAULT_ENDPOINT = "https://rds.aliyuncs.com"
API_VERSION = "2014-08-15"
