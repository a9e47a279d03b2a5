//! The browser build of tav lands with the browser issue.
