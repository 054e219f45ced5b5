"""The Azure adapter: Event Grid -> Azure Functions (``function_app.py``) -> Blob Storage and Event Grid."""
