"""Records (stage 3): the frozen dataclasses every stage passes on and the store keeps, with JSON.

``measurement`` (a window's figures), ``run`` (a stored run), ``comparison`` (a comparison's variants),
``distributed`` (a torch.distributed job's ranks and totals), and ``encoding``, the JSON and schema-version rules they share.
"""
