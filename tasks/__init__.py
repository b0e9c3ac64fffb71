"""Thin Prefect tasks over pref_core: load, call the library, log to MLflow, return paths and URIs."""
