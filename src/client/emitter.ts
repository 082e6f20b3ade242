/** A minimal typed event emitter: no dependency, works in browsers and Node. */
export type Listener<T> = (value: T) => void;

export class Emitter<M> {
  private readonly listeners = new Map<PropertyKey, Set<Listener<never>>>();

  /** Add a listener; returns a function that removes it. */
  on<K extends keyof M>(name: K, listener: Listener<M[K]>): () => void {
    let set = this.listeners.get(name);
    if (!set) this.listeners.set(name, (set = new Set()));
    set.add(listener);
    return () => this.off(name, listener);
  }

  /** Like `on`, for one call only. */
  once<K extends keyof M>(name: K, listener: Listener<M[K]>): () => void {
    const off = this.on(name, (value) => {
      off();
      listener(value);
    });
    return off;
  }

  off<K extends keyof M>(name: K, listener: Listener<M[K]>): void {
    this.listeners.get(name)?.delete(listener);
  }

  /**
   * Call every listener of `name` in order. A throwing listener does not stop the others: its
   * error goes to `onListenerError`.
   */
  protected emit<K extends keyof M>(name: K, value: M[K]): void {
    const set = this.listeners.get(name);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        (listener as Listener<M[K]>)(value);
      } catch (err) {
        this.onListenerError(err, String(name));
      }
    }
  }

  /** Report a listener's error without breaking the emitter's caller (the socket's message handler). */
  protected onListenerError(err: unknown, name: string): void {
    console.error(`listener of "${name}" threw:`, err);
  }
}
