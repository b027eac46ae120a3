//! ISO 9660 writer (in progress).
