//! Serial framings (placeholder).
