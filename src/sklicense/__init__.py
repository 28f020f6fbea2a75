"""sklicense: the skprotect licence server (FastAPI + SQLAlchemy 2 + Alembic).

SQLite (``sqlite:///./sklicense.db``) is the embedded default; several server processes may share
one PostgreSQL database (``postgresql+psycopg://…``): nothing that must be consistent lives in
process memory (quota, nonces, rate counters and the audit log are all in the database).
"""
