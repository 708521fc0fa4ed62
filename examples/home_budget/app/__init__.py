"""Home Budget Web backend: the parts its Alembic env.py imports (settings, the ORM models).

The real backend also has its FastAPI routers and services here; Alembic needs only
`app.models` (for `target_metadata`, as autogenerate does), which pulls in the settings
and the database layer, the way a real app's models do.
"""
