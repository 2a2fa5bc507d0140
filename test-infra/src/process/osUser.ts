/** An unprivileged OS account to run a server as (Postgres refuses to run as root). */
export interface OsUser {
  readonly name: string
  readonly uid: number
  readonly gid: number
}
