#!/bin/sh
# The compose load generator: shopper journeys against the gateway (log in,
# browse, order, look at the order), RATE journeys per second. The same
# journey as sightline-demo's built-in traffic, which only runs inside the
# launcher; this loop needs nothing but curl.
set -u
GATEWAY="${GATEWAY:-http://gateway:8000}"
RATE="${RATE:-2}"
pause=$(awk "BEGIN { print 1 / $RATE }")
n=0
while :; do
  n=$((n + 1))
  user="u$((n % 50 + 1))"
  token=$(curl -fsS -m 5 -H 'content-type: application/json' \
    -d "{\"user_id\":\"$user\",\"password\":\"demo\"}" "$GATEWAY/api/login" \
    | sed -n 's/.*"token" *: *"\([^"]*\)".*/\1/p')
  if [ -n "$token" ]; then
    curl -fsS -m 5 -o /dev/null "$GATEWAY/api/products"
    order=$(curl -sS -m 10 -H "authorization: Bearer $token" \
      -H 'content-type: application/json' \
      -d "{\"product_id\":\"p$((n % 5 + 1))\",\"quantity\":$((n % 3 + 1))}" \
      "$GATEWAY/api/orders" | sed -n 's/.*"order_id" *: *"\([^"]*\)".*/\1/p')
    if [ -n "$order" ]; then
      curl -sS -m 5 -o /dev/null -H "authorization: Bearer $token" "$GATEWAY/api/orders/$order"
    fi
  fi
  sleep "$pause"
done
