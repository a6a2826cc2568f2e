/**
 * herald-client/react: `<HeraldProvider client={herald}>` around the page,
 * then `useJob(id)` for one job and `useJobs(filter)` for many over one feed
 * connection. Each hook closes its connection when its component unmounts.
 */
import { createContext, createElement, useContext, useEffect, useState, type ReactNode } from "react";

import type { Herald } from "./client.js";
import { tracked, view, withEvent, withItems, withSnapshot, type JobView, type Tracked } from "./track.js";
import type { FeedFilter, Job, JobEvent, Transport } from "./types.js";

export type { JobView } from "./track.js";

const HeraldContext = createContext<Herald | null>(null);

/** Makes `client` the herald of every hook below it. */
export function HeraldProvider(props: { client: Herald; children?: ReactNode }) {
  return createElement(HeraldContext.Provider, { value: props.client }, props.children);
}

/** The client of the nearest `HeraldProvider`. */
export function useHerald(): Herald {
  const herald = useContext(HeraldContext);
  if (herald === null) throw new Error("useHerald, useJob and useJobs need a <HeraldProvider client={…}> above them");
  return herald;
}

export interface UseJob extends JobView {
  /** Its stream (or long-poll) is open. */
  connected: boolean;
  /** Why following the job stopped (a HeraldError such as 404), if it did. */
  failure: Error | null;
}

/**
 * One job, live: its snapshot, status, latest progress, items in order,
 * result and error, from its first event on (`null` id: nothing).
 */
export function useJob(id: string | null | undefined, options: { transport?: Transport } = {}): UseJob {
  const herald = useHerald();
  const [state, setState] = useState<Tracked>(() => tracked(id ?? ""));
  const [connected, setConnected] = useState(false);
  const [failure, setFailure] = useState<Error | null>(null);
  const { transport } = options;

  useEffect(() => {
    setState(tracked(id ?? ""));
    setConnected(false);
    setFailure(null);
    if (!id) return;
    const controller = new AbortController();
    const { signal } = controller;
    const failed = (e: unknown) => {
      if (!signal.aborted) setFailure(e instanceof Error ? e : new Error(String(e)));
    };
    const snapshot = () =>
      herald.get(id, { signal }).then((job) => setState((t) => withSnapshot(t, job)), failed);
    void snapshot();
    void (async () => {
      // From the first event: the items arrive in order, each once.
      for await (const event of herald.events(id, {
        signal,
        ...(transport && { transport }),
        onConnection: (c) => setConnected(c.connected),
      })) {
        setState((t) => withEvent(t, event));
      }
      // The final snapshot (finished_at and the rest, exactly).
      await snapshot();
    })().catch(failed);
    return () => controller.abort();
  }, [herald, id, transport]);

  return { ...view(state), connected, failure };
}

export interface UseJobsFilter extends FeedFilter {
  /** How many existing jobs to show at first, newest first (default 50). */
  limit?: number;
  transport?: Transport;
}

export interface UseJobs {
  /** The jobs, newest first, each as `useJob` shows one. */
  jobs: JobView[];
  /** The feed is open. */
  connected: boolean;
  /** Why following stopped (a HeraldError), if it did. */
  failure: Error | null;
}

/**
 * Many jobs, live, over one feed connection whatever their number: the
 * jobs the filter selects that exist when the component mounts (up to
 * `limit`), and every selected job that appears after.
 */
export function useJobs(filter: UseJobsFilter = {}): UseJobs {
  const herald = useHerald();
  const [jobs, setJobs] = useState<JobView[]>([]);
  const [connected, setConnected] = useState(false);
  const [failure, setFailure] = useState<Error | null>(null);
  // A filter written inline is a new object at each render: follow its value.
  const key = JSON.stringify([filter.jobs, filter.kind, filter.status, filter.limit, filter.transport]);

  useEffect(() => {
    const { jobs: ids, kind, status, limit, transport } = filter;
    const controller = new AbortController();
    const { signal } = controller;
    const byId = new Map<string, Tracked>();
    // Newest first: the jobs listed at the start in their order, new ones in front.
    let order: string[] = [];
    const asked = new Set<string>();
    let scheduled = false;
    setJobs([]);
    setConnected(false);
    setFailure(null);

    const failed = (e: unknown) => {
      if (!signal.aborted) setFailure(e instanceof Error ? e : new Error(String(e)));
    };
    // Many events in one tick make one render.
    const render = () => {
      if (scheduled) return;
      scheduled = true;
      queueMicrotask(() => {
        scheduled = false;
        if (!signal.aborted) setJobs(order.flatMap((id) => (byId.has(id) ? [view(byId.get(id)!)] : [])));
      });
    };
    const update = (id: string, f: (t: Tracked) => Tracked) => {
      byId.set(id, f(byId.get(id) ?? tracked(id)));
      render();
    };
    // A job's snapshot, and the items it had before the feed's start.
    const learn = async (job: Job) => {
      update(job.id, (t) => withSnapshot(t, job));
      let offset: number | null = byId.get(job.id)!.items.length;
      while (offset !== null && offset < job.items_count) {
        const page = await herald.items(job.id, { offset, signal });
        update(job.id, (t) => withItems(t, page.items));
        offset = page.nextOffset;
      }
    };
    const ask = (id: string) => {
      if (asked.has(id)) return;
      asked.add(id);
      herald.get(id, { signal }).then(learn).catch(failed);
    };
    // Once the feed's start is known, what existed before it: every event
    // after it follows on the feed, so nothing falls in between.
    const onStart = () => {
      if (ids) {
        for (const id of ids) ask(id);
        order = [...ids];
        return;
      }
      herald
        .list({ kind, status, limit: limit ?? 50, signal })
        .then(async (page) => {
          const listed = page.items.filter((j) => !order.includes(j.id));
          order = [...order, ...listed.map((j) => j.id)];
          for (const job of listed) asked.add(job.id);
          await Promise.all(listed.map(learn));
        })
        .catch(failed);
    };

    void (async () => {
      for await (const event of herald.feed({
        ...(ids && { jobs: ids }),
        ...(kind !== undefined && { kind }),
        ...(status !== undefined && { status }),
        ...(transport && { transport }),
        signal,
        onStart,
        onConnection: (c) => setConnected(c.connected),
      })) {
        if (!order.includes(event.jobId)) order = [event.jobId, ...order];
        update(event.jobId, (t) => withEvent(t, { id: event.seq, type: event.type, data: event.data } as JobEvent));
        ask(event.jobId);
      }
    })().catch(failed);
    return () => controller.abort();
    // eslint-disable-next-line react-hooks/exhaustive-deps -- `key` is the filter's value
  }, [herald, key]);

  return { jobs, connected, failure };
}
