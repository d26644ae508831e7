"""Engines: one small adapter per backend behind one interface (`engines.base`), plus the response cache."""
