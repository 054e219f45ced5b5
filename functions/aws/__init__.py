"""The AWS adapter: SQS -> Lambda (``handler.lambda_handler``) -> S3 and SNS."""
