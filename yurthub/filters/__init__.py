"""Response filters: the objects a component is given, rewritten or withheld.

`chain.FilterChain` picks the filters that apply to a request (by component, verb and
resource) and applies them alike to live answers (`yurthub.proxy.remote`) and to answers
from the cache (`yurthub.proxy.local`): list items, a get's object, every watch event. One
module per filter; `tenant` holds tenant isolation (a filter stage plus request rules).
"""
