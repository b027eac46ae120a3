//! manifest.json
