"""The HTTP APIs that existing clients speak: OpenAI Images and AUTOMATIC1111.

Thin adapters over generation.services: a request becomes jobs in the one global queue
(the same validation, caps and positions as the chat page), and the answer waits for
them without holding a thread or a database connection (see `waiting`).
"""
