"""Adapters behind the ports: `sqlite` (the embedded engine) and `aws` (DynamoDB and SQS)."""
