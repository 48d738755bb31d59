"""The app's tabs, one module each: `layout(ui)` places components, `wire(ui)` connects events."""
