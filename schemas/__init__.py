"""Arrow schemas of curate's record shapes (prompt rows with nested candidates and judgments, pair rows,
ranked rows, quarantine rows) and the validation that separates offending rows with a reason."""
