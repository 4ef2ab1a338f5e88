-- Needle in a haystack: the 10 biggest line items by extended price that were
-- shipped in the first week of March 1995 with a discount of exactly 0.05.
-- A selective filter on two lineitem columns (l_shipdate, l_discount) and a
-- top-10 by a measure; the trailing sort keys make the order total, so every
-- engine must return the same ten rows in the same order.
select
    l_orderkey,
    l_linenumber,
    l_partkey,
    l_suppkey,
    l_quantity,
    l_extendedprice,
    l_discount,
    l_shipdate
from
    lineitem
where
    l_shipdate >= date '1995-03-01'
    and l_shipdate < date '1995-03-08'
    and l_discount = 0.05
order by
    l_extendedprice desc,
    l_orderkey,
    l_linenumber
limit 10;
