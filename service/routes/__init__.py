"""One router per resource: stylize, styles, operations, the web page."""
