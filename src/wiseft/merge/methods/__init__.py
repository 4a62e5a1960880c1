"""The merge methods, one file each: a parameter model, a reference and a pure per-tensor
function, registered in ``wiseft.core.MERGE_METHODS`` (the registry imports these modules on
its first look-up; reach them through ``wiseft.merge``: ``get_method``, ``apply``)."""
