"""fetcher: get ApsaraDB RDS backups off Alibaba Cloud and prove they are intact."""

__version__ = "0.1.0"
