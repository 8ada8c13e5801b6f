"""Control messages for one edge (``signal.edge.<edge>.ctl``)."""

import msgspec


class CloseConnection(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="close"):
    conn_id: str
    code: int
    reason: str


EdgeControl = CloseConnection
