//! Cygwin package indexes (setup.ini), dependency closures and local mirrors.
