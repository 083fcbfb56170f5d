"""Data: the official PAPO training schema, its loading into TRL prompts, and synthetic perception data."""
