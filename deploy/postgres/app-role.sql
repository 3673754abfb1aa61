-- The service's own database role: it logs in, owns one schema (where the outcome store
-- creates and migrates its table) and nothing else: not a superuser, cannot create roles or
-- databases, cannot create objects in `public`, and other roles cannot connect to the
-- database by default. The superuser (POSTGRES_USER) stays for operators only.
--
--   psql -v ON_ERROR_STOP=1 -v app_role=confidence_app -v app_password=... -v db=confidence \
--        -f app-role.sql
-- (deploy/postgres/initdb/10-app-role.sh runs it when the compose database is first created.)

CREATE ROLE :"app_role" LOGIN PASSWORD :'app_password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 64;
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO :"app_role";
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
CREATE SCHEMA confidence AUTHORIZATION :"app_role";
ALTER ROLE :"app_role" IN DATABASE :"db" SET search_path = confidence;
