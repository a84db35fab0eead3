//! image: see DESIGN.md
