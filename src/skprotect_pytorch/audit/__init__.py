"""Audit: measure what an attacker gains from the locked files (DESIGN.md §1.4, §2)."""
