end=$((SECONDS + $1)); shift; left="$*"
while :; do
  next=""
  for e in $left; do
    IFS=: read -r i ip ports <<< "$e"
    up=""
    for p in ${ports//,/ }; do
      if (exec 3<>"/dev/tcp/$ip/$p") 2>/dev/null; then up=1; break; fi
    done
    if [ -n "$up" ]; then echo "up $i"; else next="$next $e"; fi
  done
  left=$next
  if [ -z "${left// /}" ] || [ $SECONDS -ge $end ]; then exit 0; fi
  sleep 1
done
