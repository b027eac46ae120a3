//! Per-image secrets: SSH client key, guest host key, passwords. Kept 0600
//! in the image's secrets/ directory (0700).
