#!/bin/bash
# The command sent to the GPU machine each time (run tool, carry [KIT]): the first call copies the
# project and starts pipeline.sh under setsid (it survives the call's time limit); every call then
# waits up to WAIT s, prints the progress and brings the logs back as $OUT/logs.tgz.
# KIT (default .gpu): an ignored folder of the checkout that travels, with whl/, vocab/,
# lcpp_src.tar.gz and, when the device gets another checkout than the one measured (a helper's
# worktree), proj/: a copy of the project (git archive) to run instead of the checkout.
WAIT=${1:-540}
KIT=${2:-.gpu}
W=/tmp/work
if [ ! -f $W/started ]; then
  mkdir -p $W/logs $W/models $W/kit $W/proj && touch $W/started
  cp -r $KIT/whl $KIT/vocab $KIT/lcpp_src.tar.gz $W/kit/
  if [ -d $KIT/proj ]; then cp -r $KIT/proj/. $W/proj/; else tar cf - --exclude=./.gpu --exclude=./.git . | tar xf - -C $W/proj; fi
  setsid nohup bash $W/proj/benchmarks/gpu/${PIPELINE:-pipeline.sh} > $W/logs/pipeline.out 2>&1 < /dev/null &
  echo "pipeline started"
fi
end=$((SECONDS+WAIT))
while [ $SECONDS -lt $end ] && ! grep -q ALL_DONE $W/logs/stages.txt 2>/dev/null; do sleep 5; done
cat $W/logs/stages.txt
for f in $(ls -t $W/logs/*.md 2>/dev/null | head -3); do echo "== $f"; tail -30 $f; done
tail -5 $W/logs/pipeline.out
df -h /tmp | tail -1; free -g | head -2
tar czf $OUT/logs.tgz -C $W logs
