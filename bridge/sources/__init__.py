"""Sources: each adapter turns one wire format into records."""
