"""Features: one pure function per feature, Feast's store and tables, online reads, point-in-time joins."""
