"""Judges: prompt templates (text in YAML files), parsers of judge outputs, and the judging methods."""
