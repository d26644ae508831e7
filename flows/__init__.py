"""Prefect flows around the runner (one flow per pipeline run, one task per stage) and scheduled deployments."""
