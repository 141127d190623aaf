
e
0{app="checkout", namespace="shop", level="warn"}1
€âÏªpayment declined

request_idreq-9