"""The admin endpoint over HTTP: status, metrics, health, the dashboard and the job pages.

Starlette and uvicorn live here and nowhere else (an import-linter contract).
"""
