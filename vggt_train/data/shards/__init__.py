"""Converted datasets on disk: the row schema, the conversion (plan, bookkeeping, convert, finalize, merge), reading
(Co3DSplit) and verification. Each module's first line says its job; `layout` is the bookkeeping they share."""
