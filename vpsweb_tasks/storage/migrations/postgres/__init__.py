"""PostgreSQL migrations: numbered SQL files, applied in order under an advisory lock."""
