"""The shared leaderboard: a FastAPI server over SQLAlchemy that accepts only bundles that verify.

``config`` (settings), ``db`` (tables, engine, alembic migrations), ``store`` (queries), ``verifier`` (bundle
verification in worker processes with a time limit), ``submissions`` (upload, limits, the accept/reject
procedure), ``app`` (HTTP API and pages), ``pages`` (server-rendered HTML), ``client`` (``distill-kit submit``).
"""
