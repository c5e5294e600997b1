"""公安 户籍人口 (public_security.person): Kafka topic `dept.public_security.person.v1`, drops in `landing/public_security/person/`."""
from connectors.base import feed

#: National codes every 公安 export may use: sex by GB/T 2261.1 (1 男, 2 女), and the common
#: spellings of the relation to the head of household (本人 is the head's own row).
MAPPING = """
[values.gender]
"1" = "男"
"2" = "女"
"男性" = "男"
"女性" = "女"

[values.relation_to_head]
"本人" = "户主"
"夫" = "配偶"
"妻" = "配偶"
"子" = "子女"
"女" = "子女"
"父亲" = "父母"
"母亲" = "父母"
"""

CONNECTOR = feed("public_security.person", message_key="id_no", mapping=MAPPING)
